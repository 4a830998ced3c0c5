# Ready: apache2 answers GET / with 200.
apache2ctl start 2>/dev/null
until bash /bench/http-get.sh 80; do sleep 0.02; done
