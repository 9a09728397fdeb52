etcdctl --endpoints=http://127.0.0.1:22379 put foo bar --ignore-value
exit: 128
