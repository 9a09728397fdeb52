etcdctl --endpoints=http://127.0.0.1:22379 watch foo --rev=2
exit: 5
