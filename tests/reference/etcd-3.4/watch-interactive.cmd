etcdctl --endpoints=http://127.0.0.1:22379 watch -i
exit: 143
stdin:
watch /w/b --rev=51
