etcdctl --endpoints=http://127.0.0.1:22379 del /d/c /d/d
exit: 0
