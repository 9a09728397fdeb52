etcdctl --endpoints=http://127.0.0.1:22379 get /k/ --prefix --rev=21
exit: 0
