etcdctl --endpoints=http://127.0.0.1:22379 lease timetolive 1234
exit: 0
