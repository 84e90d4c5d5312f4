"""The service's edges and its composition root: the command line, the HTTP API and its pages, background jobs
and scorer threads, limits, metrics, the demo data. The one package that may import every other.
"""
