etcdctl --endpoints=http://127.0.0.1:22379 get /k/ --prefix --max-mod-revision=21
exit: 1
