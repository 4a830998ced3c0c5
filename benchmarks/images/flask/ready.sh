# Ready: the Flask app answers GET / with 200.
python3 /app/app.py >/dev/null 2>&1 &
until bash /bench/http-get.sh 5000; do sleep 0.02; done
