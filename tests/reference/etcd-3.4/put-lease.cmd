etcdctl --endpoints=http://127.0.0.1:22379 put lkey lval --lease=1eeea1fff1dfbf0d
exit: 0
