# Ready: nginx answers GET / with 200 (bash's /dev/tcp: the image has no HTTP client).
nginx
until bash /bench/http-get.sh 80; do sleep 0.02; done
