etcdctl --endpoints=http://127.0.0.1:22379 get /k/a --consistency=l
exit: 0
