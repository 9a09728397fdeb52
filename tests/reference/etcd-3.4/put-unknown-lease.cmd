etcdctl --endpoints=http://127.0.0.1:22379 put foo v --lease=1234
exit: 1
