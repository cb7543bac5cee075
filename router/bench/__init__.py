"""A TTFT benchmark for OpenAI-compatible servers, and a compare mode for the router's routing.

The request's path through the package: `workloads` makes the chat requests, `load` decides
when each is sent, `client` sends one and times it, `metrics` summarises the timings,
`report` prints and writes them. `runner` ties those into one run; `fleet` and `compare` start
a simulator fleet behind the router and run the same workload under several routing setups;
`cli` parses the command line.
"""
