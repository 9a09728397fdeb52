etcdctl --endpoints=http://127.0.0.1:22379 put nokey --ignore-value
exit: 1
