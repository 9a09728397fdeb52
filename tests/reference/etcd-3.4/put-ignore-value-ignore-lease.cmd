etcdctl --endpoints=http://127.0.0.1:22379 put lkey --ignore-value --ignore-lease
exit: 0
