etcdctl --endpoints=http://127.0.0.1:22379 put lkey --ignore-value --lease=1eeea1fff1dfbf0d
exit: 0
