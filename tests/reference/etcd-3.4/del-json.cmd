etcdctl --endpoints=http://127.0.0.1:22379 del /e/x -w json
exit: 0
