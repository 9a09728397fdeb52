etcdctl --endpoints=http://127.0.0.1:22379 put foo bar3 -w json
exit: 0
