"""One view model per page (summary, image, methods, layers, audit), built in Python.

Templates only loop over these objects and print their strings; every number is
formatted, every n/a carries its reason, and every link is already relative to the
page that shows it. The site's templates and the PDF's render the same views; the PDF
adds only print concerns (sizes in mm, page breaks).
"""
