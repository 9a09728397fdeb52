etcdctl --endpoints=http://127.0.0.1:22379 del /d/a
exit: 0
