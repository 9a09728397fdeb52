etcdctl --endpoints=http://127.0.0.1:22379 lease keep-alive --once 1eeea1fff1dfbf7e -w json
exit: 0
