etcdctl --endpoints=http://127.0.0.1:22381 put more after-disarm
exit: 0
