etcdctl --endpoints=http://127.0.0.1:22379 get foo --rev=100000
exit: 1
