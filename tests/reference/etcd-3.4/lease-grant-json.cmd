etcdctl --endpoints=http://127.0.0.1:22379 lease grant 300 -w json
exit: 0
