"""The report model: the results a build hands over, dataset statistics, where every
output file lies, and one view model per page, which the site and the PDF render."""
