etcdctl --endpoints=http://127.0.0.1:22379 get /k/ --prefix --sort-by=VALUE --order=ASCEND
exit: 0
