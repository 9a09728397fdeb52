etcdctl --endpoints=http://127.0.0.1:22379 put nokey v --ignore-lease
exit: 1
