# Ready: the server answers a SET and a GET.
redis-server --daemonize yes --save '' --appendonly no >/dev/null
until redis-cli ping 2>/dev/null | grep -q PONG; do sleep 0.02; done
redis-cli set hello world >/dev/null && redis-cli get hello
