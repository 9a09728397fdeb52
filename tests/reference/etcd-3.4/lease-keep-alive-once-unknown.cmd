etcdctl --endpoints=http://127.0.0.1:22379 lease keep-alive --once 1234
exit: 2
