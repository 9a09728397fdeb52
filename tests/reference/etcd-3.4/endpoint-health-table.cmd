etcdctl --endpoints=http://127.0.0.1:22379 endpoint health -w table
exit: 0
