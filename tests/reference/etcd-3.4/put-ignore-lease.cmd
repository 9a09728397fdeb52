etcdctl --endpoints=http://127.0.0.1:22379 put lkey lval2 --ignore-lease
exit: 0
