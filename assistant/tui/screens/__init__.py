"""One screen per job: models, train, playground, bench, server."""
