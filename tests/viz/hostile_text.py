"""Text that tries to break out of HTML, shared by the page and server tests.

Its own module, not conftest.py: ``from conftest import`` picks whichever conftest was
imported first when several test folders run together.
"""

HOSTILE = 'She said "><script>alert(1)</script> & \'hi\' \u202e at the bank.'
