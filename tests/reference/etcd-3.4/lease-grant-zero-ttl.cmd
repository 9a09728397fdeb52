etcdctl --endpoints=http://127.0.0.1:22379 lease grant 0
exit: 0
