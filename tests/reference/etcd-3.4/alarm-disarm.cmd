etcdctl --endpoints=http://127.0.0.1:22379 alarm disarm
exit: 0
