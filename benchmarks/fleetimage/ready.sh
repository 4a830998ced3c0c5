# Ready: the application's start reads its configuration (one of the data files) and answers.
md5sum /data/part1 > /dev/null && echo ready
