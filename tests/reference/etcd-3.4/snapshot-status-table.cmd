etcdctl --endpoints=http://127.0.0.1:22379 snapshot status snapshot.db -w table
exit: 0
