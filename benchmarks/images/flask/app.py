"""A one-route Flask app: the web-framework image of the hello suite."""

from flask import Flask

app = Flask(__name__)


@app.route("/")
def hello() -> str:
    return "hello\n"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000)
