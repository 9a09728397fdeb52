etcdctl --endpoints=http://127.0.0.1:22379 get /k/ --prefix --max-create-revision=16
exit: 1
