etcdctl --endpoints=http://127.0.0.1:22379 get foo --rev=1059
exit: 1
