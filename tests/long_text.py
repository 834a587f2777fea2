"""A long sentence shared by the explain, terminal, figure and page tests (its own module, not conftest:
``from conftest import`` finds whichever conftest was imported first)."""

# 59 words, 65 tokens with MiniLM: longer than the terminal's 31 rows, and in layer 0, head 2
# puts all of bank's attention on "small", the word before it (a positional head).
LONG = ("In the late autumn of that strange year, when the river had risen twice above its banks and the old mill "
        "by the bridge had finally closed, my grandmother walked every morning to the small bank on the corner of "
        "the square to deposit the few coins she had saved, believing that money kept anywhere else would simply "
        "vanish.")
