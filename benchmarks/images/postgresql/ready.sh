# Ready: the cluster made at install time answers a query (pg_ctlcluster waits for it to accept).
pg_ctlcluster 15 main start && su postgres -c "psql -tAc 'select 1'"
