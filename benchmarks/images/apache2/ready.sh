# Ready: apache2 answers GET / with 200.
# /run/lock may be hidden (containerd's `ctr run` mounts an empty tmpfs on /run); a failed start ends
# the probe at once instead of leaving it to poll until the bench's timeout.
mkdir -p /run/lock
apache2ctl start 2>/dev/null || exit 1
until bash /bench/http-get.sh 80; do sleep 0.02; done
