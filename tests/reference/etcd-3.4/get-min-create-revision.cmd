etcdctl --endpoints=http://127.0.0.1:22379 get /k/ --prefix --min-create-revision=16
exit: 1
