"""Running suites: the sweep (runner), one worker process per case (launch, worker), what it calls (workload)."""
