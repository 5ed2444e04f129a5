
P	â
P	â	first
P	â
P	âchild(
P	â
keptx
Ph
P	ârenamed
P	ârenamed
@
PZHXºx
@PZHXºy
@PZHXºx
@PZHXºx
@PZ
HXºown
@PZHXºx
@PZHXº
undeclared