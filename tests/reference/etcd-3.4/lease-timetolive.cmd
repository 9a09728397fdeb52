etcdctl --endpoints=http://127.0.0.1:22379 lease timetolive 1eeea1fff1dfbf7e
exit: 0
