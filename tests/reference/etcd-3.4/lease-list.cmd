etcdctl --endpoints=http://127.0.0.1:22379 lease list
exit: 0
