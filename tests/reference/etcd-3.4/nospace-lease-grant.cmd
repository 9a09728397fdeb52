etcdctl --endpoints=http://127.0.0.1:22381 lease grant 60
exit: 1
