# class: lying objects
# expect: an object equal to everything is not plain data
class Liar:
    def __eq__(self, other):
        return True

    def __hash__(self):
        return 0


def f(x):
    return Liar()
