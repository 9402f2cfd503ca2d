# class: lying objects
# expect: int/str/list subclasses are refused, whatever they claim
class Int(int):
    def __eq__(self, other):
        return True

    def __hash__(self):
        return 0


class L(list):
    def __eq__(self, other):
        return True


def f(x):
    return [Int(0), L()][x % 2]
