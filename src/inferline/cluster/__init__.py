"""inferline on a Ray cluster: each local deployment a Ray Serve deployment of replicas, routed by prefix
affinity and token load and scaled on token load, and batch jobs on Ray Data. The only package that
imports Ray; nothing imports it unless `--ray` is asked for."""
