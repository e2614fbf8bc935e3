"""A merged dataset (``facefoundry merge``): the rows of several finished runs in one label space; never generated."""
