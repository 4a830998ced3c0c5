# GET / on 127.0.0.1:$1; exits 0 on a 200 answer.
exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null || exit 1
printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
read -r status <&3
case "$status" in *" 200 "*) exit 0 ;; *) exit 1 ;; esac
